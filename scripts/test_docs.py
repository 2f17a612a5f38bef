#!/usr/bin/python3
"""test_docs.py — the documentation is true: every page says what it documents in its first line,
every relative link resolves, every docs page is linked from the README, and the README's commands run as written.

Blocks of README.md and docs/*.md preceded by `<!-- docs-test: sh -->` or `<!-- docs-test: python -->`
run in a scratch folder holding `build` and `data` (links to the repository's), with a model cache
made of the small fixture models under the real names (ViT-B-16.pt, ViT-L-14.pt, the vocabulary) and
CARSEG_OFFLINE=1: the commands run exactly as a user types them, only the weights are the tiny
random ones. `make ...` steps are CI's own build and test (already run): a line
`make deps && make && CMD` runs CMD, a line of make steps only is skipped.
Prints one line per check and `N passed, N failed`; exits 1 on a failure."""
import os, re, shutil, subprocess, sys, tempfile

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), '..'))
passed, failed = 0, 0


def ok(what):
    global passed
    passed += 1
    print('ok   ' + what)


def fail(what, why):
    global failed
    failed += 1
    print('FAIL ' + what + ': ' + why)


def pages():
    out = [os.path.join(ROOT, 'README.md')]
    d = os.path.join(ROOT, 'docs')
    out += sorted(os.path.join(d, f) for f in os.listdir(d) if f.endswith('.md'))
    return out


LINK = re.compile(r'\[[^\]]*\]\(([^)\s]+)\)')


def check_page(path):
    rel = os.path.relpath(path, ROOT)
    text = open(path, encoding='utf-8').read()
    first = text.split('\n', 1)[0]
    if not re.match(r'^# \S.{8,}$', first):
        fail(rel + ' first line', 'not a one-line "# title" saying what the page documents: %r' % first)
    else:
        ok(rel + ' first line')
    bad = []
    for m in LINK.finditer(re.sub(r'```.*?```', '', text, flags=re.S)):
        target = m.group(1)
        if re.match(r'^[a-z]+:', target) or target.startswith('#'):
            continue
        p = os.path.normpath(os.path.join(os.path.dirname(path), target.split('#')[0]))
        if not os.path.exists(p):
            bad.append(target)
    if bad:
        fail(rel + ' links', 'missing: ' + ', '.join(bad))
    else:
        ok(rel + ' links')


def blocks(path):
    lines = open(path, encoding='utf-8').read().split('\n')
    i = 0
    while i < len(lines):
        m = re.match(r'^<!-- docs-test: (sh|python) -->$', lines[i].strip())
        if m and i + 1 < len(lines) and lines[i + 1].startswith('```'):
            j = i + 2
            body = []
            while j < len(lines) and not lines[j].startswith('```'):
                body.append(lines[j])
                j += 1
            yield m.group(1), i + 1, '\n'.join(body)
            i = j
        i += 1


def shared_dir():
    env = os.environ.get('CARSEG_SHARED')
    for d in ([env] if env else []) + [os.path.join(ROOT, '..', 'shared')]:
        if d and os.path.isdir(d):
            return os.path.abspath(d)
    return None


def sh_commands(body):
    """The block's commands: comments dropped, continuation lines joined, make steps removed."""
    cmds, cur = [], ''
    for line in body.split('\n'):
        if not cur and (not line.strip() or line.lstrip().startswith('#')):
            continue
        cur += line.rstrip('\\') + ' ' if line.endswith('\\') else line
        if line.endswith('\\'):
            continue
        parts = [p.strip() for p in cur.split('&&')]
        while parts and re.match(r'^make( |$)', parts[0]):
            parts.pop(0)
        if parts:
            cmds.append(' && '.join(parts))
        cur = ''
    return cmds


def run_blocks():
    sh = shared_dir()
    need = ['fixtures/clip_sg/model_jit.pt', 'fixtures/models/sc_f16.safetensors',
            'clip/bpe_simple_vocab_16e6.txt.gz']
    if not sh or not all(os.path.exists(os.path.join(sh, n)) for n in need):
        print('skipped: the documented commands (shared fixtures not found; set CARSEG_SHARED)')
        return
    if not os.path.exists(os.path.join(ROOT, 'build', 'carseg')):
        fail('documented commands', 'build/carseg missing: run make first')
        return
    tmp = tempfile.mkdtemp(prefix='carseg-docs-')
    try:
        cache = os.path.join(tmp, 'cache')
        os.makedirs(cache)
        for name, rel in (('ViT-B-16.pt', need[0]), ('ViT-L-14.pt', need[1]),
                          ('bpe_simple_vocab_16e6.txt.gz', need[2])):
            os.symlink(os.path.join(sh, rel), os.path.join(cache, name))
        work = os.path.join(tmp, 'work')
        os.makedirs(work)
        for d in ('build', 'data'):
            os.symlink(os.path.join(ROOT, d), os.path.join(work, d))
        env = dict(os.environ, CARSEG_CACHE=cache, CARSEG_OFFLINE='1',
                   PATH=os.path.join(ROOT, 'build') + os.pathsep + os.environ.get('PATH', ''),
                   PYTHONPATH=os.path.join(ROOT, 'python'),
                   CARSEG_LIBRARY=os.path.join(ROOT, 'build', 'libcarseg.so.1'),
                   OMP_WAIT_POLICY='passive')
        for path in pages():
            rel = os.path.relpath(path, ROOT)
            for kind, line, body in blocks(path):
                if kind == 'sh':
                    for cmd in sh_commands(body):
                        r = subprocess.run(['bash', '-c', cmd], cwd=work, env=env,
                                           capture_output=True, text=True)
                        what = '%s:%d `%s`' % (rel, line, cmd if len(cmd) < 90 else cmd[:87] + '...')
                        if r.returncode:
                            fail(what, 'exit %d: %s' % (r.returncode, r.stderr.strip()[-400:]))
                        else:
                            ok(what)
                else:
                    r = subprocess.run(['/usr/bin/python3', '-c', body], cwd=work, env=env,
                                       capture_output=True, text=True)
                    what = '%s:%d python block' % (rel, line)
                    if r.returncode:
                        fail(what, 'exit %d: %s' % (r.returncode, r.stderr.strip()[-400:]))
                    else:
                        ok(what)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def check_index():
    """Every docs/*.md page is linked from the README (its index), so none is orphaned."""
    readme = open(os.path.join(ROOT, 'README.md'), encoding='utf-8').read()
    linked = set(os.path.normpath(m.group(1).split('#')[0]) for m in LINK.finditer(readme))
    missing = [os.path.relpath(p, ROOT) for p in pages()[1:]
               if os.path.relpath(p, ROOT) not in linked]
    if missing:
        fail('README.md index', 'docs pages not linked from README.md: ' + ', '.join(missing))
    else:
        ok('README.md index')


def main():
    for p in pages():
        check_page(p)
    check_index()
    run_blocks()
    print('%d passed, %d failed' % (passed, failed))
    return 1 if failed else 0


if __name__ == '__main__':
    sys.exit(main())
