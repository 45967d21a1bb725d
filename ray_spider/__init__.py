"""ray_spider: QLoRA fine-tuning of LLaMA-family chat models for text-to-SQL on Spider."""

__version__ = "0.1.0"
