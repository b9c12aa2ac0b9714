"""SASAuditCallback: probe selection and resume, then run -> decide -> publish every N epochs."""
