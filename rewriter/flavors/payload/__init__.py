"""Files that flavors copy into the wheel's support package; never imported by the rewriter."""
