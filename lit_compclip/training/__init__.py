"""Training with Lightning: the LightningModule around the library's model, the data module, callbacks, a run and its
resumption. The library (towers, loss, probes, checkpoints) never imports this package."""
