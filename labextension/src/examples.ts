/**
 * The gallery's examples in JupyterLab: a Launcher section, a side panel with search and
 * tags, a tab per example (summary, files, environment, verification, preview), Use, and
 * Update my copy (the plan first, then the merge, then the updated notebook).
 *
 * Every request goes to this Jupyter server's /gallery-stage/ handlers, which talk to the
 * gallery with the server's own hub token. The preview is the one thing loaded from the
 * gallery directly: a public, content-addressed page on the hub's origin (for a hub group's
 * example, an address the gallery signed for this user, good for a few minutes), framed with
 * the same sandbox as the gallery's own pages frame it (no scripts, no same-origin; a link
 * out opens a new tab).
 */
import {
  ILayoutRestorer,
  JupyterFrontEnd,
  JupyterFrontEndPlugin
} from '@jupyterlab/application';
import { ICommandPalette, MainAreaWidget } from '@jupyterlab/apputils';
import { URLExt } from '@jupyterlab/coreutils';
import { IDocumentManager } from '@jupyterlab/docmanager';
import { ILauncher } from '@jupyterlab/launcher';
import { ServerConnection } from '@jupyterlab/services';
import { LabIcon } from '@jupyterlab/ui-components';
import { Message } from '@lumino/messaging';
import { Widget } from '@lumino/widgets';

import { el, humanSize, requestAPI, requestWithStatus, StageError } from './request';

const OPEN = 'gallery-examples:open';
const BROWSE = 'gallery-examples:browse';
const PANEL_ID = 'gallery-examples-panel';
const LAUNCHER_CATEGORY = 'Examples';
const LAUNCHER_ITEMS = 4;
const POLL_MS = 1000;
const POLL_LIMIT_MS = 30 * 60 * 1000;

export const examplesIcon = new LabIcon({
  name: 'gallery-stage:examples',
  svgstr:
    '<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 24 24" width="16" height="16">' +
    '<g class="jp-icon3" fill="#616161">' +
    '<rect x="3" y="3" width="8" height="8" rx="1"/><rect x="13" y="3" width="8" height="8" rx="1"/>' +
    '<rect x="3" y="13" width="8" height="8" rx="1"/><rect x="13" y="13" width="8" height="8" rx="1"/>' +
    '</g></svg>'
});

interface IExample {
  slug: string;
  title: string;
  summary: string;
  state: string;
  tags: string[];
  author: string;
  updated: string;
  version: number | null;
  url: string | null;
  preview_url: string | null;
}

interface IPage {
  count: number;
  results: IExample[];
}

interface IDetail extends IExample {
  notebook: string;
  files: { path: string; size?: number | null }[];
  environment: string;
  environment_state: string;
  licence: string;
  /** The hub groups whose members see it; empty or absent: everyone. */
  groups?: string[];
  // Present only where the gallery verifies examples by running them.
  verification?: any;
  runs?: any;
}

interface IPlan {
  folder: string;
  target: string;
  environment_state: string;
  environment_text: string;
  kernel: string;
}

interface IKernelResult {
  name?: string;
  display_name?: string;
  installed?: boolean;
  note?: string;
}

interface IJob {
  id: string;
  kind?: string;
  state: string;
  message: string;
  local_path: string;
  result: {
    folder?: string;
    path?: string;
    kernel?: IKernelResult;
  } & Partial<IUpdatePlan>;
}

/** A copy the user made of the example (by Use, or brought up to date by an update). */
interface ICopy {
  folder: string;
  path: string;
  version: number;
  outdated: boolean;
  local_path: string;
}

interface ICellChange {
  cell: number | null;
  change: string;
  side: string;
}

interface IUpdateFile {
  path: string;
  status: string;
  beside: string;
  cells: ICellChange[];
  conflicts: ICellChange[];
}

/** What an update does to a copy: the gallery's plan, and an update job's result. */
interface IUpdatePlan {
  folder: string;
  path: string;
  from_version: number;
  to_version: number;
  up_to_date: boolean;
  files: IUpdateFile[];
  changes: number;
  conflicts: number;
  backup: string;
}

/** What the example tab needs of JupyterLab: open a copy, and tell an unsaved one. */
export interface ICopyOpener {
  open(path: string, kernel: string | null, reload?: boolean): Promise<void>;
  unsaved(path: string): boolean;
}

const FILE_OUTCOMES: { [status: string]: string } = {
  updated: 'replaced by the new version (you had not changed it)',
  added: 'new in this version',
  removed: 'no longer in the example; removed (kept in the backup)',
  merged: "your edits and the new version's, merged",
  conflict: 'conflict: marked in the notebook with <<<<<<< local … >>>>>>> remote',
  kept: 'yours is kept',
  unchanged: 'unchanged'
};

const ENV_STATES: { [state: string]: string } = {
  '': 'No environment has been built for it (yet).',
  queued: 'Its environment is queued to be built.',
  building: 'Its environment is being built.',
  ready: 'Its environment is built: Use comes with a kernel for it.',
  failed: 'Its environment could not be built; Use still copies it, with the commands to build it.',
  cannot_build: 'Its environment cannot be built here; Use still copies it.'
};

function query(params: { [key: string]: string }): string {
  const kept: { [key: string]: string } = {};
  for (const [k, v] of Object.entries(params)) {
    if (v) {
      kept[k] = v;
    }
  }
  return URLExt.objectToQueryString(kept);
}

function describe(err: unknown): string {
  return err instanceof StageError ? err.message : String(err);
}

function plural(n: number, word: string): string {
  return `${n} ${word}${n === 1 ? '' : 's'}`;
}

function describeCells(cells: ICellChange[]): string {
  return cells
    .map(c => `${c.cell ? `cell ${c.cell}` : 'notebook'}: ${c.change} (${c.side})`)
    .join('; ');
}

function describeFile(f: IUpdateFile): string {
  const what = FILE_OUTCOMES[f.status] ?? f.status;
  return f.status === 'kept' && f.beside ? `${what}; the new version goes beside it as ${f.beside}` : what;
}

const sleep = (ms: number) => new Promise(resolve => window.setTimeout(resolve, ms));

/** Follow a job of the gallery until it is done or failed (null: given up, or the tab closed). */
async function followJob(
  settings: ServerConnection.ISettings,
  job: IJob,
  report: (job: IJob) => void,
  gone: () => boolean
): Promise<IJob | null> {
  const started = Date.now();
  while (job.state !== 'done' && job.state !== 'failed') {
    report(job);
    if (gone() || Date.now() - started > POLL_LIMIT_MS) {
      return null;
    }
    await sleep(POLL_MS);
    job = await requestAPI<IJob>(settings, `jobs/${encodeURIComponent(job.id)}`);
  }
  return job;
}

function stateLabel(state: string): string {
  return state === 'approved' ? 'curated' : state === 'staged' ? 'staged' : state;
}

/** The left side panel: search, a tag filter, the curated and the staged examples. */
export class ExamplesPanel extends Widget {
  private search: HTMLInputElement;
  private tags: HTMLSelectElement;
  private status: HTMLElement;
  private curated: HTMLUListElement;
  private staged: HTMLUListElement;
  private timer = 0;
  private generation = 0;

  constructor(
    private settings: ServerConnection.ISettings,
    private open: (slug: string) => void
  ) {
    super();
    this.id = PANEL_ID;
    this.addClass('jp-GalleryExamples-panel');
    this.title.icon = examplesIcon;
    this.title.caption = 'Gallery examples';
    const node = this.node;
    node.setAttribute('role', 'region');
    node.setAttribute('aria-label', 'Gallery examples');
    node.appendChild(el('h2', { class: 'jp-GalleryExamples-heading' }, 'Gallery examples'));

    const form = el('form', { role: 'search', class: 'jp-GalleryExamples-search' });
    form.appendChild(el('label', { for: 'jp-GalleryExamples-q' }, 'Search examples'));
    this.search = el('input', {
      type: 'search',
      id: 'jp-GalleryExamples-q',
      name: 'q',
      maxlength: '200',
      placeholder: 'title, summary, tag…'
    });
    form.appendChild(this.search);
    form.appendChild(el('label', { for: 'jp-GalleryExamples-tag' }, 'Tag'));
    this.tags = el('select', { id: 'jp-GalleryExamples-tag', name: 'tag' });
    this.tags.appendChild(el('option', { value: '' }, 'All tags'));
    form.appendChild(this.tags);
    form.addEventListener('submit', event => {
      event.preventDefault();
      void this.refresh();
    });
    this.search.addEventListener('input', () => {
      window.clearTimeout(this.timer);
      this.timer = window.setTimeout(() => void this.refresh(), 300);
    });
    this.tags.addEventListener('change', () => void this.refresh());
    node.appendChild(form);

    this.status = el('p', { class: 'jp-GalleryExamples-status', role: 'status', 'aria-live': 'polite' });
    node.appendChild(this.status);
    const section = (id: string, heading: string): HTMLUListElement => {
      const box = el('section', { 'aria-labelledby': id });
      box.appendChild(el('h3', { id }, heading));
      const list = el('ul', { class: 'jp-GalleryExamples-list' });
      box.appendChild(list);
      node.appendChild(box);
      return list;
    };
    this.curated = section('jp-GalleryExamples-h-curated', 'Curated');
    this.staged = section('jp-GalleryExamples-h-staged', 'Staged, under review');
  }

  focusSearch(): void {
    this.search.focus();
  }

  protected onAfterAttach(msg: Message): void {
    super.onAfterAttach(msg);
    void this.refresh();
  }

  protected onActivateRequest(msg: Message): void {
    this.search.focus();
  }

  async refresh(): Promise<void> {
    const generation = ++this.generation;
    const q = this.search.value.trim();
    const tag = this.tags.value;
    this.status.textContent = 'Loading examples…';
    try {
      const [curated, staged] = await Promise.all(
        ['approved', 'staged'].map(state =>
          requestAPI<IPage>(this.settings, `examples${query({ q, tag, state })}`)
        )
      );
      if (generation !== this.generation) {
        return; // a newer search has started
      }
      this.fill(this.curated, curated.results, 'No curated examples match.');
      this.fill(this.staged, staged.results, 'No staged examples match.');
      if (!q && !tag) {
        this.offerTags([...curated.results, ...staged.results]);
      }
      const n = curated.count + staged.count;
      this.status.textContent =
        `${n} example${n === 1 ? '' : 's'}` + (q || tag ? ' match' + (n === 1 ? 'es' : '') : '');
    } catch (err) {
      if (generation === this.generation) {
        this.status.textContent = `The gallery cannot be listed: ${describe(err)}`;
      }
    }
  }

  private offerTags(examples: IExample[]): void {
    const current = this.tags.value;
    const names: string[] = [];
    examples.forEach(e => e.tags.forEach(t => names.includes(t) || names.push(t)));
    names.sort();
    while (this.tags.options.length > 1) {
      this.tags.remove(1);
    }
    for (const name of names) {
      this.tags.appendChild(el('option', { value: name }, name));
    }
    this.tags.value = names.includes(current) ? current : '';
  }

  private fill(list: HTMLUListElement, examples: IExample[], empty: string): void {
    list.replaceChildren();
    if (examples.length === 0) {
      list.appendChild(el('li', { class: 'jp-GalleryExamples-empty' }, empty));
    }
    for (const example of examples) {
      const item = el('li');
      const button = el('button', {
        type: 'button',
        class: 'jp-GalleryExamples-item',
        'data-slug': example.slug
      });
      const title = el('span', { class: 'jp-GalleryExamples-title' }, example.title);
      button.appendChild(title);
      if (example.state === 'staged') {
        button.appendChild(el('span', { class: 'jp-GalleryExamples-badge' }, 'staged'));
      }
      if (example.summary) {
        button.appendChild(el('span', { class: 'jp-GalleryExamples-summary' }, example.summary));
      }
      if (example.tags.length) {
        button.appendChild(
          el('span', { class: 'jp-GalleryExamples-tags' }, example.tags.map(t => `#${t}`).join(' '))
        );
      }
      button.addEventListener('click', () => this.open(example.slug));
      item.appendChild(button);
      list.appendChild(item);
    }
  }
}

/** One example in a main-area tab, with Use and Update my copy. */
export class ExampleView extends Widget {
  private heading: HTMLElement;
  private detail: IDetail | null = null;
  private polling = false;
  private updating = false;

  constructor(
    private settings: ServerConnection.ISettings,
    private slug: string,
    private lab: ICopyOpener
  ) {
    super();
    this.addClass('jp-GalleryExample');
    this.node.setAttribute('tabindex', '-1');
    this.heading = el('h1', { tabindex: '-1' }, 'Loading…');
    this.node.appendChild(this.heading);
  }

  protected onActivateRequest(msg: Message): void {
    this.heading.focus();
  }

  async load(): Promise<IDetail | null> {
    try {
      this.detail = await requestAPI<IDetail>(this.settings, `examples/${encodeURIComponent(this.slug)}`);
    } catch (err) {
      this.heading.textContent = 'This example cannot be shown';
      this.node.appendChild(el('p', { role: 'alert' }, describe(err)));
      return null;
    }
    this.render(this.detail);
    return this.detail;
  }

  private render(d: IDetail): void {
    const node = this.node;
    this.heading.textContent = d.title;
    const meta = el('p', { class: 'jp-GalleryExample-meta' });
    meta.appendChild(el('span', { class: `jp-GalleryExamples-badge jp-mod-${d.state}` }, stateLabel(d.state)));
    meta.append(
      ` by ${d.author}` + (d.version ? ` · version ${d.version}` : '') + (d.licence ? ` · ${d.licence}` : '')
    );
    node.appendChild(meta);
    if (d.groups?.length) {
      node.appendChild(
        el('p', { class: 'jp-GalleryExample-audience' }, `For the members of ${d.groups.join(', ')} only.`)
      );
    }
    if (d.summary) {
      node.appendChild(el('p', { class: 'jp-GalleryExample-summary' }, d.summary));
    }
    if (d.tags.length) {
      const tags = el('ul', { class: 'jp-GalleryExample-tags', 'aria-label': 'Tags' });
      d.tags.forEach(t => tags.appendChild(el('li', {}, t)));
      node.appendChild(tags);
    }
    if (d.url) {
      node.appendChild(
        el('a', { href: d.url, target: '_blank', rel: 'noopener', class: 'jp-GalleryExample-out' }, 'Open in the gallery')
      );
    }
    node.appendChild(this.useSection(d));
    if (d.state === 'approved') {
      node.appendChild(this.updateSection(d));
    }

    const section = (id: string, heading: string): HTMLElement => {
      const box = el('section', { 'aria-labelledby': `${id}-${d.slug}` });
      box.appendChild(el('h2', { id: `${id}-${d.slug}` }, heading));
      node.appendChild(box);
      return box;
    };
    const env = section('jp-GalleryExample-h-env', 'Environment');
    env.appendChild(
      el('p', {}, d.environment ? `Specified by ${d.environment}.` : 'No environment file: it runs in a standard kernel.')
    );
    env.appendChild(
      el('p', { class: 'jp-GalleryExample-envstate' }, ENV_STATES[d.environment_state] ?? d.environment_state)
    );
    const verification = d.verification ?? d.runs;
    if (verification !== undefined && verification !== null) {
      const box = section('jp-GalleryExample-h-verify', 'Verification');
      box.appendChild(el('p', { class: 'jp-GalleryExample-verification' }, describeVerification(verification)));
    }

    const files = section('jp-GalleryExample-h-files', 'Files');
    const table = el('table', { class: 'jp-GalleryExample-files' });
    table.appendChild(el('caption', { class: 'jp-GalleryExample-hidden' }, `Files of ${d.title}`));
    const head = el('tr');
    head.append(el('th', { scope: 'col' }, 'File'), el('th', { scope: 'col' }, 'Size'));
    table.appendChild(el('thead')).appendChild(head);
    const body = el('tbody');
    for (const f of d.files) {
      const row = el('tr');
      const name = el('td');
      name.appendChild(el('code', {}, f.path));
      if (f.path === d.notebook) {
        name.append(' (main notebook)');
      }
      row.append(name, el('td', {}, humanSize(f.size ?? null)));
      body.appendChild(row);
    }
    table.appendChild(body);
    files.appendChild(table);

    const preview = section('jp-GalleryExample-h-preview', 'Preview');
    if (d.preview_url) {
      // As on the gallery's pages: a sandbox with no scripts and an opaque origin that lets
      // only a link out of the preview open a new tab of its own (gallery.previews
      // FRAME_SANDBOX), no referrer; the preview's own CSP forbids scripts and anything
      // remote as well. A group's example's signed address expires within minutes: load it
      // at once.
      const signed = d.preview_url.includes('?');
      preview.appendChild(
        el('iframe', {
          class: 'jp-GalleryExample-preview',
          src: d.preview_url,
          sandbox: 'allow-popups allow-popups-to-escape-sandbox',
          referrerpolicy: 'no-referrer',
          loading: signed ? 'eager' : 'lazy',
          title: `Preview of ${d.title}`
        })
      );
      preview.appendChild(
        el('p', { class: 'jp-GalleryExample-hint' }, 'Outputs are shown as saved by the author; scripts in the notebook do not run here.')
      );
    } else {
      preview.appendChild(el('p', {}, 'No preview yet.'));
    }
  }

  private useSection(d: IDetail): HTMLElement {
    const box = el('section', { class: 'jp-GalleryExample-use', 'aria-labelledby': `jp-GalleryExample-h-use-${d.slug}` });
    box.appendChild(el('h2', { id: `jp-GalleryExample-h-use-${d.slug}` }, 'Use'));
    if (d.state !== 'approved') {
      box.appendChild(
        el('p', {}, d.state === 'staged'
          ? 'Use opens once a reviewer approves this example. Until then you can read it in the preview below.'
          : 'This example has no approved version to use.')
      );
      return box;
    }
    const form = el('form', { class: 'jp-GalleryExample-useform' });
    const inputId = `jp-GalleryExample-folder-${d.slug}`;
    form.appendChild(el('label', { for: inputId }, 'Folder name in ~/examples'));
    const input = el('input', { type: 'text', id: inputId, name: 'folder', maxlength: '100', required: '' });
    input.value = d.slug;
    const button = el('button', { type: 'submit', class: 'jp-mod-styled jp-mod-accept' }, 'Use this example');
    form.append(input, button);
    box.appendChild(form);
    const plan = el('p', { class: 'jp-GalleryExample-plan' });
    box.appendChild(plan);
    const progress = el('progress', { 'aria-label': 'Progress of the copy', hidden: '' });
    const status = el('p', { class: 'jp-GalleryExample-status', role: 'status', 'aria-live': 'polite' });
    box.append(progress, status);
    requestAPI<IPlan>(this.settings, `examples/${encodeURIComponent(d.slug)}/use-plan`)
      .then(p => {
        plan.textContent =
          `Copies it to ${p.target} (a free name is chosen if that folder exists). ` +
          p.environment_text + (p.kernel ? ` Kernel: ${p.kernel}.` : '');
      })
      .catch(err => {
        plan.textContent = describe(err);
      });
    form.addEventListener('submit', event => {
      event.preventDefault();
      if (this.polling) {
        return;
      }
      void this.use(d, input.value.trim(), button, progress, status);
    });
    return box;
  }

  private async use(
    d: IDetail,
    folder: string,
    button: HTMLButtonElement,
    progress: HTMLProgressElement,
    status: HTMLElement
  ): Promise<void> {
    this.polling = true;
    button.disabled = true;
    progress.hidden = false;
    progress.removeAttribute('value');
    status.textContent = 'Asking the gallery for a copy…';
    try {
      const queued = await requestAPI<IJob>(this.settings, `examples/${encodeURIComponent(d.slug)}/use`, {
        method: 'POST',
        body: JSON.stringify({ folder })
      });
      const job = await followJob(
        this.settings,
        queued,
        j => (status.textContent = j.message || (j.state === 'queued' ? 'Waiting for a worker…' : 'Copying…')),
        () => this.isDisposed
      );
      if (job === null) {
        return;
      }
      progress.hidden = true;
      if (job.state === 'failed') {
        status.textContent = `The copy failed: ${job.message}`;
        return;
      }
      const where = job.result.path ?? '';
      const kernel = job.result.kernel;
      const withKernel = kernel && kernel.installed && kernel.name ? kernel.name : null;
      if (!job.local_path) {
        status.textContent = `Copied to ${where}, which is outside this Jupyter server's folder.`;
        return;
      }
      const path = `${job.local_path}/${d.notebook}`;
      status.textContent =
        `Copied to ${where}. Opening ${d.notebook}` +
        (withKernel ? ` with the kernel ${kernel?.display_name || withKernel}.` : '.') +
        (kernel && !kernel.installed && kernel.note ? ` ${kernel.note}` : '');
      await this.lab.open(path, withKernel);
    } catch (err) {
      progress.hidden = true;
      status.textContent = `Use failed: ${describe(err)}`;
    } finally {
      this.polling = false;
      button.disabled = false;
    }
  }

  /**
   * Update my copy: shown when one of the user's copies is of an older approved version.
   * "See what will change" asks for the plan (the gallery reads the copy in a job: 202 until
   * it is ready); "Update my copy" merges, reports conflicts and the backup, and opens the
   * updated notebook.
   */
  private updateSection(d: IDetail): HTMLElement {
    const headingId = `jp-GalleryExample-h-update-${d.slug}`;
    const box = el('section', { class: 'jp-GalleryExample-update', 'aria-labelledby': headingId, hidden: '' });
    box.appendChild(el('h2', { id: headingId }, 'Update my copy'));
    const intro = el('p');
    const copies = el('ul', { class: 'jp-GalleryExample-copies' });
    const plan = el('div', { class: 'jp-GalleryExample-updateplan' });
    const progress = el('progress', { 'aria-label': 'Progress of the update', hidden: '' });
    const status = el('p', { class: 'jp-GalleryExample-updatestatus', role: 'status', 'aria-live': 'polite' });
    box.append(intro, copies, progress, status, plan);

    const list = async (): Promise<void> => {
      let mine: ICopy[];
      try {
        mine = await requestAPI<ICopy[]>(this.settings, `examples/${encodeURIComponent(d.slug)}/copies`);
      } catch (err) {
        console.warn('gallery-stage: your copies of', d.slug, 'cannot be listed:', describe(err));
        return;
      }
      const outdated = mine.filter(c => c.outdated);
      copies.replaceChildren();
      if (outdated.length === 0) {
        return; // the status line stays when the last copy was just updated
      }
      box.hidden = false;
      intro.textContent =
        `Version ${d.version} is approved, newer than your ` +
        (outdated.length === 1 ? 'copy' : 'copies') +
        ' below. An update merges it into your copy notebook cell by cell: your edits are kept, ' +
        'a cell changed by both you and the new version is marked in the notebook, a file you ' +
        'changed stays and the new one goes beside it, and your files as they were are kept in ' +
        '.gallery-backup/ inside the copy. First see what it will change; nothing is written ' +
        'until you confirm.';
      for (const c of outdated) {
        const item = el('li');
        item.appendChild(el('code', {}, c.path));
        item.append(` (version ${c.version}) `);
        const see = el(
          'button',
          { type: 'button', class: 'jp-mod-styled', 'aria-label': `See what updating ${c.path} will change` },
          'See what will change'
        );
        see.addEventListener('click', () => void this.showPlan(d, c, plan, progress, status, list));
        item.appendChild(see);
        copies.appendChild(item);
      }
    };
    void list();
    return box;
  }

  private async showPlan(
    d: IDetail,
    copy: ICopy,
    box: HTMLElement,
    progress: HTMLProgressElement,
    status: HTMLElement,
    relist: () => Promise<void>
  ): Promise<void> {
    if (this.updating) {
      return;
    }
    if (this.unsaved(d, copy, status)) {
      return;
    }
    this.updating = true;
    box.replaceChildren();
    progress.hidden = false;
    progress.removeAttribute('value');
    status.textContent = `Reading your copy in ${copy.path}…`;
    const url = `examples/${encodeURIComponent(d.slug)}/update-plan`;
    try {
      // The first request reads the copy afresh; later ones wait for that reading.
      let answer = await requestWithStatus<IUpdatePlan | IJob>(
        this.settings,
        url + query({ folder: copy.folder, refresh: 'true' })
      );
      const started = Date.now();
      while (answer.status === 202) {
        const job = answer.data as IJob;
        status.textContent = job.message || `Reading your copy in ${copy.path}…`;
        if (this.isDisposed || Date.now() - started > POLL_LIMIT_MS) {
          return;
        }
        await sleep(POLL_MS);
        answer = await requestWithStatus<IUpdatePlan | IJob>(this.settings, url + query({ folder: copy.folder }));
      }
      progress.hidden = true;
      const p = answer.data as IUpdatePlan;
      if (p.up_to_date) {
        status.textContent = `Your copy is already of version ${p.to_version}; nothing to update.`;
        return;
      }
      status.textContent =
        `From version ${p.from_version} to version ${p.to_version}: ${plural(p.changes, 'file')} to write` +
        (p.conflicts ? `, ${plural(p.conflicts, 'conflict')} to resolve by hand` : '') +
        '. Nothing has been written yet.';
      const heading = el('h3', { tabindex: '-1' }, `What updating ${p.path} changes`);
      box.append(heading, this.planTable(p, 'What the update does to each file'));
      const apply = el('button', { type: 'button', class: 'jp-mod-styled jp-mod-accept' }, 'Update my copy');
      apply.addEventListener('click', () => void this.applyUpdate(d, copy, apply, box, progress, status, relist));
      box.appendChild(apply);
      heading.focus();
    } catch (err) {
      progress.hidden = true;
      status.textContent = `The update cannot be planned: ${describe(err)}`;
    } finally {
      this.updating = false;
    }
  }

  /** The update reads and merges what is on disk: an open copy with unsaved edits is saved first. */
  private unsaved(d: IDetail, copy: ICopy, status: HTMLElement): boolean {
    const notebook = copy.local_path ? `${copy.local_path}/${d.notebook}` : '';
    if (notebook && this.lab.unsaved(notebook)) {
      status.textContent =
        `${notebook} is open with unsaved changes. Save it first: the update merges what is on disk.`;
      return true;
    }
    return false;
  }

  private planTable(p: IUpdatePlan, caption: string): HTMLTableElement {
    const table = el('table', { class: 'jp-GalleryExample-files jp-GalleryExample-updatefiles' });
    table.appendChild(el('caption', { class: 'jp-GalleryExample-hidden' }, caption));
    const head = el('tr');
    head.append(
      el('th', { scope: 'col' }, 'File'),
      el('th', { scope: 'col' }, 'What happens'),
      el('th', { scope: 'col' }, 'Cells')
    );
    table.appendChild(el('thead')).appendChild(head);
    const body = el('tbody');
    for (const f of p.files) {
      const row = el('tr', { class: `jp-mod-${f.status}`, 'data-path': f.path });
      const name = el('td');
      name.appendChild(el('code', {}, f.path));
      row.append(name, el('td', {}, describeFile(f)), el('td', {}, describeCells(f.cells)));
      body.appendChild(row);
    }
    table.appendChild(body);
    return table;
  }

  private async applyUpdate(
    d: IDetail,
    copy: ICopy,
    button: HTMLButtonElement,
    box: HTMLElement,
    progress: HTMLProgressElement,
    status: HTMLElement,
    relist: () => Promise<void>
  ): Promise<void> {
    if (this.updating) {
      return;
    }
    if (this.unsaved(d, copy, status)) {
      return;
    }
    this.updating = true;
    button.disabled = true;
    progress.hidden = false;
    progress.removeAttribute('value');
    status.textContent = `Asking the gallery to update ${copy.path}…`;
    try {
      const queued = await requestAPI<IJob>(this.settings, `examples/${encodeURIComponent(d.slug)}/update`, {
        method: 'POST',
        body: JSON.stringify({ folder: copy.folder })
      });
      const job = await followJob(
        this.settings,
        queued,
        j => (status.textContent = j.message || (j.state === 'queued' ? 'Waiting for a worker…' : 'Merging…')),
        () => this.isDisposed
      );
      if (job === null) {
        return;
      }
      progress.hidden = true;
      if (job.state === 'failed') {
        status.textContent = `The update failed: ${job.message} Nothing of your copy was changed.`;
        button.disabled = false;
        return;
      }
      const r = job.result as IUpdatePlan;
      box.replaceChildren();
      const heading = el('h3', { tabindex: '-1' }, `${copy.path} is now of version ${r.to_version}`);
      box.appendChild(heading);
      const conflicts = r.files.filter(f => f.status === 'conflict');
      if (r.up_to_date) {
        box.appendChild(el('p', {}, `It was already of version ${r.to_version}; nothing was written.`));
      } else {
        box.appendChild(
          el(
            'p',
            { class: 'jp-GalleryExample-updateresult' },
            `It was of version ${r.from_version}. Your files as they were are in ${r.backup}.`
          )
        );
        if (conflicts.length) {
          box.appendChild(
            el('p', {}, 'Conflicts to resolve by hand (marked <<<<<<< local … ======= … >>>>>>> remote):')
          );
          const list = el('ul', { class: 'jp-GalleryExample-conflicts' });
          for (const f of conflicts) {
            list.appendChild(el('li', {}, `${f.path}: ${describeCells(f.conflicts.length ? f.conflicts : f.cells)}`));
          }
          box.appendChild(list);
        }
        box.appendChild(this.planTable(r, 'What the update did to each file'));
      }
      heading.focus();
      const kernel = job.result.kernel;
      const withKernel = kernel && kernel.installed && kernel.name ? kernel.name : null;
      if (!job.local_path) {
        status.textContent = `Updated ${r.path}, which is outside this Jupyter server's folder.`;
      } else {
        status.textContent =
          `Updated to version ${r.to_version}` +
          (r.conflicts ? ` with ${plural(r.conflicts, 'conflict')} to resolve` : '') +
          `. Opening ${d.notebook}.`;
        await this.lab.open(`${job.local_path}/${d.notebook}`, withKernel, true);
      }
      void relist();
    } catch (err) {
      progress.hidden = true;
      button.disabled = false;
      status.textContent = `The update failed: ${describe(err)}`;
    } finally {
      this.updating = false;
    }
  }
}

function describeVerification(v: any): string {
  if (typeof v === 'string') {
    return v;
  }
  if (Array.isArray(v)) {
    if (v.length === 0) {
      return 'Not run by the gallery yet.';
    }
    v = v[0];
  }
  if (v && typeof v === 'object') {
    const state = v.state ?? v.status ?? '';
    const when = v.finished_at ?? v.at ?? v.created ?? '';
    const message = v.message ?? v.error ?? '';
    return [state && `Last run: ${state}`, when && `(${when})`, message].filter(Boolean).join(' ') || 'Not run yet.';
  }
  return String(v);
}

const plugin: JupyterFrontEndPlugin<void> = {
  id: 'gallery-stage:examples',
  description: "The gallery's examples: Launcher section, side panel, example tabs and Use.",
  autoStart: true,
  requires: [IDocumentManager],
  optional: [ILauncher, ICommandPalette, ILayoutRestorer],
  activate: (
    app: JupyterFrontEnd,
    docManager: IDocumentManager,
    launcher: ILauncher | null,
    palette: ICommandPalette | null,
    restorer: ILayoutRestorer | null
  ) => {
    const settings = app.serviceManager.serverSettings;
    const lab: ICopyOpener = {
      open: async (path, kernel, reload = false) => {
        if (kernel) {
          // The kernel was installed after this page loaded its list of kernels: without a
          // fresh list the notebook would start in another kernel of the same language.
          await app.serviceManager.kernelspecs.refreshSpecs();
        }
        const open = docManager.findWidget(path);
        if (open && reload) {
          await open.context.revert(); // the update changed it on disk
        }
        docManager.open(path, 'default', kernel ? { name: kernel } : undefined, { mode: 'tab-after' });
      },
      unsaved: path => Boolean(docManager.findWidget(path)?.context.model.dirty)
    };
    const views = new Map<string, MainAreaWidget<ExampleView>>();
    const openExample = async (slug: string): Promise<void> => {
      const existing = views.get(slug);
      if (existing && !existing.isDisposed) {
        app.shell.activateById(existing.id);
        return;
      }
      const view = new ExampleView(settings, slug, lab);
      const widget = new MainAreaWidget({ content: view });
      widget.id = `gallery-example-${slug}`;
      widget.title.label = slug;
      widget.title.icon = examplesIcon;
      widget.title.closable = true;
      views.set(slug, widget);
      widget.disposed.connect(() => views.delete(slug));
      app.shell.add(widget, 'main');
      app.shell.activateById(widget.id);
      const detail = await view.load();
      if (detail) {
        widget.title.label = detail.title;
        widget.title.caption = `Gallery example: ${detail.title}`;
      }
    };
    const panel = new ExamplesPanel(settings, slug => void openExample(slug));
    app.shell.add(panel, 'left', { rank: 450 });
    restorer?.add(panel, PANEL_ID);

    app.commands.addCommand(OPEN, {
      label: args => (args.title as string) || 'Open a gallery example',
      caption: args => (args.summary as string) || 'Open this example of the gallery',
      icon: examplesIcon,
      execute: args => openExample(String(args.slug || ''))
    });
    app.commands.addCommand(BROWSE, {
      label: 'Browse all examples',
      caption: "Search the gallery's curated and staged examples",
      icon: examplesIcon,
      execute: () => {
        app.shell.activateById(PANEL_ID);
        panel.focusSearch();
      }
    });
    palette?.addItem({ command: BROWSE, category: 'Gallery' });

    if (launcher) {
      launcher.add({ command: BROWSE, category: LAUNCHER_CATEGORY, rank: 100 });
      requestAPI<IPage>(settings, `examples${query({ state: 'approved' })}`)
        .then(page => {
          page.results.slice(0, LAUNCHER_ITEMS).forEach((e, i) =>
            launcher.add({
              command: OPEN,
              args: { slug: e.slug, title: e.title, summary: e.summary },
              category: LAUNCHER_CATEGORY,
              rank: i
            })
          );
        })
        .catch(err => console.warn('gallery-stage: no examples for the Launcher:', describe(err)));
    }
  }
};

export default plugin;
