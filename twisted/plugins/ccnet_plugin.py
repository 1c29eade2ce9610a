"""twistd plugin: ``twistd -n ccnet --config conf/ccnet.ini``."""

from ccnet.plugin import ServiceMaker

ccnet = ServiceMaker()
