"""composepar's compiled core (private). Built by CMake from the sources beside this file."""
