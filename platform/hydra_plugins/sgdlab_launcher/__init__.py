"""The Hydra launcher plugin `hydra/launcher=sgdlab` (sgdlab_launcher.py). `hydra_plugins` itself is a namespace
package with no __init__.py: Hydra scans every installed plugin under it."""
