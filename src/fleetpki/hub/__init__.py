"""The built-in IoT hub: a sans-I/O MQTT core, the Azure IoT Hub dialect and the listener."""
