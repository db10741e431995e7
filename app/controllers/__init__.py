"""What the main window does, split by concern (each controller is given the window)."""
