"""One run's human views: the report and its plots, galleries, export/bench/stream of a run, similarity search.
Views read run directories (and load a run through the public pipeline); they never train."""
