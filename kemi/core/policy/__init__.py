"""Transfer policy: rules from SQL, evaluated in memory."""
