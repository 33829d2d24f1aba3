"""Write-back with guard rails: requests from MQTT, HTTP and the command line, checked, limited, recorded.

docs/writes.md explains the safety model. The package is imported by collector/config.py (`config.py` here,
which must stay free of other collector imports) and by the collector at run time (`service.py`).
"""
