from importlib.metadata import PackageNotFoundError, version

try:
    VERSION = version("sendguard")
except PackageNotFoundError:  # running from a checkout without `pip install -e .`
    VERSION = "0.0.0+checkout"
