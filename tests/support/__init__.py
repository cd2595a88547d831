"""Test support shared by every test folder: fake upstreams, the app run in
memory or on a free port. ``tests/conftest.py`` turns them into fixtures; test
modules import the classes for their type hints and for what a fixture cannot
hand over (an upstream scripted per test)."""
