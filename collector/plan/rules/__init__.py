"""Rewrite rules over the logical plan, one per module: top-N pushdown (topn.py),
pruning the columns an edge reads (column_pruning.py), and the nodes a query's where
clause excludes (node_pruning.py)."""
