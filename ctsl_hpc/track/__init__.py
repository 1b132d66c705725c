"""MLflow tracking: the run tree (:mod:`.runs`), its journal (:mod:`.journal`) and replay
(:mod:`.replay`), context tags (:mod:`.tags`), and a tracking server for clusters (:mod:`.server`).

The core never imports this package: tracking reaches the training loop and the evaluation as
sinks. Import from the modules (``from ctsl_hpc.track.runs import Tracker``): this file imports
nothing, so the light modules (tags) do not pull MLflow in.
"""
