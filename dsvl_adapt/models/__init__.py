"""Models: reference presets built in code, an offline tokenizer, safe checkpoint loading."""
