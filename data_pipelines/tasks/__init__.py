"""Task families the offline recipes generate themselves: prompts, gold answers, a scripted R1-style solver."""
