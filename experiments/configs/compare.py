"""The loss comparison: same encoder, same budget, same data, one loss at a time.

Command:  python experiments/train.py --config experiments/configs/compare.py \
              --set loss=<name> --set dataset=<omniglot|mnist> --seed <0|1|2>
          names: contrastive, log_likelihood, koch_l1, triplet, npair, ntxent, supcon,
          multi_similarity, arcface, softmax; the pair-loss variants
          contrastive_hadsell, literal_sigmoid (experiments/registry.py)
          MNIST (5 training digits): add --set batch_size=120 --set samples_per_class=24
          a loss's setting: --set loss_kwargs.margin=0.5, --set loss_init.scale=10.0
          choosing it: --set holdout=validation (held-out training classes)
Same budget: every loss encodes batch_size images a step (pair losses: batch_size / 2
pairs), for the same number of steps, with the same encoder and optimizer.
Expected: MAP@R, R-precision, P@1 and 20-way (MNIST: 5-way, only 5 held-out digits)
one-shot accuracy on held-out classes. Measured (3 seeds each,
experiments/results/loss_comparison.md): Omniglot MAP@R from 0.138 (log-likelihood)
to 0.425 (multi-similarity); MNIST from 0.373 (log-likelihood) to 0.490 (triplet),
every loss at its paper's defaults. The pair losses at settings chosen on validation
(8 seeds, CPU, ~4 min a run): log-likelihood (s = 20) 0.243 against contrastive
(m = 1) 0.154 on Omniglot; MNIST (s = 10, m = 2) 0.418 against 0.372.
"""


def get_config() -> dict:
  return dict(
    dataset="omniglot",  # held-out evaluation alphabets; mnist: digits 5-9 held out
    train_split="background",
    image_size=28,
    model="conv4",
    filters=64,
    embedding_dim=64,
    normalize=True,
    loss="contrastive",
    batch_size=128,
    samples_per_class=4,
    batch_by_group=False,  # True: a batch's characters come from few alphabets
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
