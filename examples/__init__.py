"""Worked examples of processors of your own (README.md, "Your own state")."""
