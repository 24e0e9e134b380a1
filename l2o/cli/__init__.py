"""The `l2o` command: flags, configs, run folders, hosts; the only printer. Imports all rooms."""
