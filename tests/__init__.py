"""sqlstate's tests: unit/ (no broker), integration/ (real broker), acceptance/ (the CLI)."""
