"""Local stand-ins that speak the real wire protocols: Falcon Event Streams and CloudTrail Lake."""
