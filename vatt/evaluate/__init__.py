"""Downstream evaluation of a pretrained VATT (spec section 7).

    metrics    the metrics, once: top-k, mAP, ROC AUC, d-prime, retrieval R@k / MedR
    probes     low-rank linear classifier on frozen features, window-averaged test logits
    retrieval  zero-shot text->video (S_vt) and video->audio (S_va) retrieval
    features   frozen-feature extraction from batches with the model in eval mode
    runner     evaluate_model(model, cfg, jobs) -> results dict
    report     results.json, report.md and PNG plots into a folder or s3:// prefix
    registry   the model registry and its promotion gate (atomic, every decision logged)
    data       plan(cfg, tasks) -> (jobs, skipped): one job per (task, dataset) on the ingested
               datasets, read through the loader (eval windows, sorted, manifest class names)
    pipeline   checkpoint -> evaluation -> report -> promotion (the `vatt evaluate` job)
    signal     the learning-signal check: a model vs a random init of its config vs chance

Submodules import torch; import them directly (`from vatt.evaluate.metrics import ...`)."""
