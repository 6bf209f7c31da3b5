"""Watch a sweep in a browser: ``python -m ndt.view RESULTS_DIR`` serves a local, read-only page.

- `ndt.view.data`: what the page shows, as plain dicts built from the results folder: the sweep grid
  (the status logic of `ndt.running.status`, progress, final accuracy, the layer-mean sparkline and its
  events), one run (layer x step matrix of any metric, events of the default detector, loss and gradient
  norm, run.json, investigation reports) and comparisons. Metric rows are read incrementally: a run's
  Parquet parts that were read once are never read again unless they change; a finished run is not even
  listed again.
- `ndt.view.server`: a standard-library HTTP server over those dicts (JSON), the page (``static/``) and the
  files of the results folder (nothing outside it; ``..`` and absolute paths are refused).

The charts are Plotly's offline bundle (``plotly.min.js`` from the Python package, the ``view`` extra): the
page needs no network. Nothing here trains or imports the training code.
"""
