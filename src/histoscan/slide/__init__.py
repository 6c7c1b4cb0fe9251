"""Whole slides: reading (reader.py), tissue (tissue.py), the tile grid (tiling.py), and the
heatmap, GeoJSON and summary of one analysis (run.py: ``analyse_slide``)."""
