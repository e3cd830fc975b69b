"""Omniglot one-shot trained on images_background_small1 alone (136 characters of 5
alphabets), tested on the official 20 runs: the final configuration of issue #19.

Command:  python experiments/sweep.py \
              --config experiments/configs/omniglot_oneshot_small1.py \
              --seeds 0 1 2 --jobs 3 --out runs/oneshot_small1
          python experiments/ensemble.py runs/oneshot_small1/run_s0 \
              runs/oneshot_small1/run_s1 runs/oneshot_small1/run_s2 \
              --out runs/oneshot_small1/ensemble.json
          (the committed runs, experiments/results/runs/oneshot_small1_cpu3/, were
          made with the same configuration as ``--config omniglot_oneshot.py --grid
          train_split=small1``: their config.json is what this file gives)
Time:     3,006-3,010 s a run, three at a time on a 2-core Intel Xeon; ensemble.py
          a few minutes.
Expected: 77.9 +- 0.4 % a seed, 80.3 +- 1.4 % with test-time shifts, 86.25 % as the
          3-seed ensemble with them (Lake et al.'s deep convnet: 76.0 %);
          experiments/results/omniglot_oneshot.md.
Everything else is omniglot_oneshot.py's (the background configuration).
"""

import pathlib
import runpy

_BACKGROUND = runpy.run_path(
  str(pathlib.Path(__file__).with_name("omniglot_oneshot.py"))
)


def get_config() -> dict:
  return {**_BACKGROUND["get_config"](), "train_split": "small1"}
