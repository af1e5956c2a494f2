"""RFFT: reward fine-tuning of the ControlNet with RFNet feedback and the Consistent-Condition regulariser."""
