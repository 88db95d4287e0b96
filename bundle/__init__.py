"""spleen-kd: multi-task teacher -> tiny student UNet distillation for spleen CT segmentation."""

__version__ = "0.1.0"
