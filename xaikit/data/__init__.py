"""Data: synthetic images with ground truth, and loaders for real data sets."""
