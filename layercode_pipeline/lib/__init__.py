"""Pure helpers shared by the listener, the simulator, the assets and the CLI."""
