"""RFNet, the multimodal reliability classifier: model, preprocessing, checkpoint, scorer, data, training."""
