"""What the chapters' notebooks share: the methods each paper compares, the paper's own
numbers, and how our ranking of the methods is compared with the paper's."""
