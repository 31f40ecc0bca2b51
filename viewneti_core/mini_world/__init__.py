"""The mini world: synthetic scenes, the build of its small base model and view mapper, and its measurements."""
