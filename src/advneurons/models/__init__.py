"""Model architectures (the one owner of layer names and sensitivity sites), defended model structures,
and checkpoints. Models take [0, 1] images and normalise inside."""
