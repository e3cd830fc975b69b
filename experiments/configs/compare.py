"""The loss comparison: same encoder, same budget, same data, one loss at a time.

Command:  python experiments/train.py --config experiments/configs/compare.py \
              --set loss=<name> --set dataset=<omniglot|mnist> --seed <0|1|2>
          names: contrastive, log_likelihood, koch_l1, triplet, npair, ntxent, supcon,
          multi_similarity, arcface, softmax (experiments/registry.py)
Expected: MAP@R, R-precision, P@1 and 20-way (MNIST: 5-way, only 5 held-out digits)
one-shot accuracy on held-out classes; see experiments/results/.
"""


def get_config() -> dict:
  return dict(
    dataset="omniglot",  # held-out evaluation alphabets; mnist: digits 5-9 held out
    train_split="background",
    image_size=28,
    model="conv4",
    embedding_dim=64,
    normalize=True,
    loss="contrastive",
    batch_size=128,
    samples_per_class=4,
    augment=None,
    learning_rate=1e-3,
    weight_decay=0.0,
    steps=1000,
    eval_every=1000,
    save_every=1000,
    ways=20,
    episodes=200,
    max_test=5000,
    seed=0,
  )
