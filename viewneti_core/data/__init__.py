"""DTU data: the dataset's layout and facts, cameras and camera files, synthetic scenes, download/archives/preparation, the training dataset and its augmentations."""
