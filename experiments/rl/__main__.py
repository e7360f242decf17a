"""``python -m experiments.rl``: see experiments/rl/train.py."""

from experiments.rl import train

if __name__ == '__main__':
  train.entry()
