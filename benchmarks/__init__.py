"""`make bench`: the project measured against its anchors, side by side in one run."""
