"""P2Bot's task: supervised PersonaChat with an episode split, receiver ranking, self-play."""
