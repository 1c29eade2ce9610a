"""mPlane: the information model, the supervisor (component and client sides), authorization."""
