"""What runs on each node: the node agent (join check, launch, failure report)."""
