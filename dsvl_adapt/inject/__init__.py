"""The two knowledge-injection stages: fine-tune (LoRA teacher) and distill (teacher -> student)."""
