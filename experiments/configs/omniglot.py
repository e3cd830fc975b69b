"""The main job: Omniglot from the bundled pack, scored on Lake's official runs.

Command:  python experiments/train.py          (this file is the default configuration)
          choose on validation: --set holdout=validation (5 background alphabets held
          out; the evaluation set and the official runs are never looked at)
Trains a Conv-4 (120k parameters) with SupCon on the 964 characters of
images_background (28 x 28, Koch et al.'s affine augmentation, 32 characters x 4
drawings a batch, AdamW warm-up-cosine, 1,500 steps), then scores Lake et al.'s 20
official within-alphabet 20-way one-shot runs, beside raw pixels, the untrained
encoder and Lake et al.'s table (deep convnet 86.5 %, Koch's siamese convnet 92.0 %,
people 95.5 %, BPL 96.7 %), with held-out MAP@R and P@1 on the 659 evaluation
characters.
Chosen on validation (--set holdout=validation, seed 0; 20-way within-alphabet episodes
and MAP@R on the 5 held-out background alphabets; compute relative to the first row,
from the measured step times):
  64 x 4 a batch, 64 filters,   600 steps (1.0):  84.4 %, MAP@R 0.586
  64 x 4 a batch, 64 filters,   900 steps (1.5):  86.2 %, MAP@R 0.609
  64 x 4 a batch, 32 filters, 1,800 steps (1.3):  85.6 %, MAP@R 0.590
  32 x 4 a batch, 64 filters, 1,800 steps (1.3):  87.3 %, MAP@R 0.623
and, with that encoder, test-time augmentation (each evaluation embedding the mean of
the 9 one-pixel shifts of the image): 87.3 % -> 88.95 % (5 shifts: 88.7 %), adopted.
The 1,800-step run took about 11 minutes on the 2-core CPU, over the main job's
10-minute budget, so the same configuration at 1,500 steps (1.1) was run on
validation too: 88.4 % with the shifts (MAP@R 0.650 with shifts), 0.5 points below,
and is the main job (its intermediate evaluation dropped as well). Since Conv-4 pools
with models.max_pool_2x2 (the same values, a 1.26x faster step on XLA:CPU) it runs in
about 8 minutes (8 min 16 s measured: 91.25 % on the official runs).
Expected: see README (measured on the 2-core CPU).
Data: the pack bundled with metriclearn (no download, no files).
"""


def get_config() -> dict:
  return dict(
    dataset="omniglot",
    train_split="background",
    image_size=28,
    model="conv4",
    filters=64,
    embedding_dim=128,
    normalize=True,
    loss="supcon",
    batch_size=128,  # 32 characters x 4 drawings
    samples_per_class=4,
    batch_by_group=False,
    augment="koch",
    learning_rate=2e-3,
    weight_decay=1e-4,
    # chosen on validation (5 held-out background alphabets, 20-way within-alphabet
    # episodes; see the docstring), at about the same compute
    steps=1500,
    eval_every=1500,  # the final evaluation only (the 10-minute budget)
    save_every=500,
    tta=True,  # final evaluation: the mean embedding of the 9 one-pixel shifts
    ways=20,
    episodes=200,
    holdout="test",
    validation_groups=5,
    seed=0,
  )
