"""The scorecard: accuracy and retention, speed, memory, size and hardware fit."""
