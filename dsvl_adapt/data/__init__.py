"""Data: validated rows from plugins or user files, turned into DeepSeek-VL batches."""
