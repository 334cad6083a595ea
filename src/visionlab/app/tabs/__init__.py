"""App tabs, one module each (image, webcam, generate); main.py appends them to the page."""
