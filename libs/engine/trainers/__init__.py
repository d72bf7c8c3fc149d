"""One trainer per method behind one small interface (`base.Trainer`); libs/engine/methods.py lists them."""
