"""python -m big_contrast.evaluate: see big_contrast/evaluate/command.py."""
from big_contrast.evaluate import command

if __name__ == "__main__":
  command.run_main()
