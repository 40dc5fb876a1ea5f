"""Build script: every piece of metadata comes from settings.ini (the single source)."""
from configparser import ConfigParser
from pathlib import Path

import setuptools

cfg = ConfigParser(delimiters=['='])
cfg.read(Path(__file__).parent / 'settings.ini', encoding='utf-8')
cfg = cfg['DEFAULT']

def _split(key): return cfg.get(key, '').split()

licenses = {'mit': ('MIT', 'License :: OSI Approved :: MIT License')}
lic_name, lic_classifier = licenses[cfg['license']]
readme = Path(__file__).parent / 'README.md'

setuptools.setup(
    name=cfg['lib_name'],
    version=cfg['version'],
    description=cfg['description'],
    long_description=readme.read_text(encoding='utf-8') if readme.exists() else '',
    long_description_content_type='text/markdown',
    keywords=cfg['keywords'],
    author=cfg['author'],
    author_email=cfg['author_email'],
    license=lic_name,
    classifiers=['Programming Language :: Python :: 3', 'Intended Audience :: Science/Research', lic_classifier],
    python_requires=f">={cfg['min_python']}",
    packages=setuptools.find_packages(include=[cfg['lib_path'], f"{cfg['lib_path']}.*"]),
    include_package_data=True,
    # the shipped data travels with a wheel; dignified_peer.pipeline.data_dir() finds it there
    data_files=[('share/dignified_peer/data', [str(p) for p in sorted(Path('data').glob('*')) if p.is_file()])],
    install_requires=_split('requirements'),
    extras_require={'dev': _split('dev_requirements')},
    entry_points={'console_scripts': cfg.get('console_scripts', '').split(),
                  'nbdev': [f"{cfg['lib_path']}={cfg['lib_path']}._modidx:d"]},
    zip_safe=False,
)
