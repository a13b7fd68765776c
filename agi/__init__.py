"""referee beside Asterisk (FastAGI server and AMI controller). See issue 4."""
