/**
 * "Submit to gallery": a notebook toolbar button, a palette command and a File menu entry.
 *
 * The page only talks to its own Jupyter server (XSRF-protected, like every other request of
 * JupyterLab); the server part sends the saved notebook to the gallery under the hub identity.
 */
import {
  JupyterFrontEnd,
  JupyterFrontEndPlugin
} from '@jupyterlab/application';
import {
  Dialog,
  ICommandPalette,
  showDialog,
  showErrorMessage,
  ToolbarButton
} from '@jupyterlab/apputils';
import { URLExt } from '@jupyterlab/coreutils';
import { IMainMenu } from '@jupyterlab/mainmenu';
import { INotebookTracker, NotebookPanel } from '@jupyterlab/notebook';
import { ServerConnection } from '@jupyterlab/services';
import { Widget } from '@lumino/widgets';

import { el, humanSize, requestAPI, StageError } from './request';
import examplesPlugin from './examples';

const COMMAND = 'gallery-stage:submit';
const LABEL = 'Submit to gallery';
const LICENCES = ['CC-BY-4.0', 'CC0-1.0', 'MIT', 'BSD-3-Clause', 'Apache-2.0'];
const TITLES: { [kind: string]: string } = {
  unreachable: 'Gallery unreachable',
  'not-allowed': 'Not allowed',
  'too-large': 'Too large',
  invalid: 'Invalid submission'
};

interface IDataLink {
  name: string;
  target: string;
}

interface IPrevious {
  example?: string;
  url?: string;
  title?: string;
  summary?: string;
  tags?: string[];
  licence?: string;
  files?: string[];
  data_links?: IDataLink[];
  groups?: string[];
}

interface IContext {
  configured: boolean;
  /** The hub groups the gallery lets this user show a new example to, or why it cannot say. */
  audience: { groups: string[]; error: string };
  files: { path: string; size: number | null; referenced: boolean }[];
  environment: { source: string; name: string; content: string };
  data_links: IDataLink[];
  previous: IPrevious;
  title: string;
}

interface IForm {
  title: string;
  summary: string;
  tags: string[];
  licence: string;
  example: string;
  files: string[];
  environment: { name: string; content: string } | null;
  data_links: IDataLink[];
  /** Who sees a new example: everyone, or the members of `groups` (one at least). */
  audience: 'everyone' | 'groups';
  groups: string[];
}

/**
 * The dialog's body: title, summary, tags, licence, the audience (everyone, or some of the
 * contributor's hub groups), files, environment and data links.
 */
class StageForm extends Widget {
  constructor(path: string, context: IContext, values: IForm | null) {
    super({ node: el('form', { class: 'jp-GalleryStage-form' }) });
    const prev = context.previous || {};
    const form = this.node as HTMLFormElement;
    form.addEventListener('submit', event => event.preventDefault());
    form.appendChild(
      el('p', { class: 'jp-GalleryStage-note' }, `The saved ${path} goes to the gallery's staged section for review.`)
    );
    if (prev.example) {
      const line = el('label', { class: 'jp-GalleryStage-check' });
      const box = el('input', { type: 'checkbox', name: 'revise' });
      box.checked = values ? values.example !== '' : true;
      line.append(box, ` New revision of the example "${prev.example}"`);
      if (prev.url) {
        const link = el('a', { href: prev.url, target: '_blank', rel: 'noopener' }, ' (last submission)');
        line.appendChild(link);
      }
      box.dataset.slug = prev.example;
      form.appendChild(line);
    }
    const text = (name: string, label: string, value: string, area = false): void => {
      const row = el('label', { class: 'jp-GalleryStage-field' }, label);
      const input = area
        ? el('textarea', { name, rows: '3' })
        : el('input', { type: 'text', name });
      input.value = value;
      if (name === 'licence') {
        input.setAttribute('list', 'jp-GalleryStage-licences');
      }
      row.appendChild(input);
      form.appendChild(row);
    };
    text('title', 'Title (required)', values?.title ?? prev.title ?? context.title);
    text('summary', 'Summary', values?.summary ?? prev.summary ?? '', true);
    text('tags', 'Tags (comma-separated)', (values?.tags ?? prev.tags ?? []).join(', '));
    text('licence', 'Licence', values?.licence ?? prev.licence ?? '');
    const list = el('datalist', { id: 'jp-GalleryStage-licences' });
    LICENCES.forEach(l => list.appendChild(el('option', { value: l })));
    form.appendChild(list);
    form.appendChild(this.audience(context, prev, values));

    const files = el('fieldset', { class: 'jp-GalleryStage-files' });
    files.appendChild(el('legend', {}, 'Files to include'));
    if (context.files.length === 0) {
      files.appendChild(el('p', {}, 'No other files beside the notebook.'));
    }
    const chosen = new Set(values?.files ?? prev.files ?? []);
    for (const file of context.files) {
      const line = el('label', { class: 'jp-GalleryStage-check' });
      const box = el('input', { type: 'checkbox', name: 'file', value: file.path });
      box.checked = values ? chosen.has(file.path) : chosen.has(file.path) || file.referenced;
      line.append(box, ` ${file.path} `, el('small', {}, humanSize(file.size)));
      files.appendChild(line);
    }
    form.appendChild(files);

    const env = context.environment;
    const envSet = el('fieldset', { class: 'jp-GalleryStage-environment' });
    const where =
      env.source === 'file'
        ? `${env.name} beside the notebook`
        : env.source === 'kernel'
          ? `${env.name}, drafted from the packages the kernel has imported`
          : `${env.name}, drafted from the imports (start the kernel to pin versions)`;
    envSet.appendChild(el('legend', {}, `Environment: ${where}`));
    const include = el('label', { class: 'jp-GalleryStage-check' });
    const includeBox = el('input', { type: 'checkbox', name: 'include-environment' });
    includeBox.checked = values ? values.environment !== null : true;
    include.append(includeBox, ' Include the environment spec');
    envSet.appendChild(include);
    const envText = el('textarea', { name: 'environment', rows: '6', spellcheck: 'false' });
    envText.value = values?.environment?.content ?? env.content;
    envText.dataset.name = env.name;
    envSet.appendChild(envText);
    form.appendChild(envSet);

    const links = el('fieldset', { class: 'jp-GalleryStage-links' });
    links.appendChild(el('legend', {}, 'Data links (declared, not copied)'));
    const offered: IDataLink[] = [];
    const seen = new Set<string>();
    for (const link of [...(prev.data_links ?? []), ...context.data_links]) {
      if (!seen.has(link.target)) {
        seen.add(link.target);
        offered.push(link);
      }
    }
    const kept = new Set((values?.data_links ?? prev.data_links ?? []).map(l => l.target));
    if (offered.length === 0) {
      links.appendChild(el('p', {}, 'No paths or URLs found in the code.'));
    }
    offered.forEach(link => {
      const line = el('div', { class: 'jp-GalleryStage-link' });
      const box = el('input', { type: 'checkbox', name: 'data-link', value: link.target });
      box.checked = kept.has(link.target);
      const name = el('input', { type: 'text', name: 'data-link-name', value: link.name });
      name.value = link.name;
      line.append(box, name, el('code', {}, link.target));
      links.appendChild(line);
    });
    form.appendChild(links);
  }

  /**
   * Who will see a new example: a radio for everyone, another for the members of the hub
   * groups ticked below it. A new revision keeps its example's audience, so the choice is
   * off while "New revision" is ticked.
   */
  private audience(context: IContext, prev: IPrevious, values: IForm | null): HTMLElement {
    const set = el('fieldset', { class: 'jp-GalleryStage-audience' });
    set.appendChild(el('legend', {}, 'Who sees it'));
    const groups = context.audience?.groups ?? [];
    const chosen = new Set(values?.groups ?? prev.groups ?? []);
    const radio = (value: string, label: string, checked: boolean): HTMLInputElement => {
      const line = el('label', { class: 'jp-GalleryStage-check' });
      const input = el('input', { type: 'radio', name: 'audience', value });
      input.checked = checked;
      line.append(input, ` ${label}`);
      set.appendChild(line);
      return input;
    };
    const note = el('p', { class: 'jp-GalleryStage-note' });
    if (groups.length === 0) {
      note.textContent = context.audience?.error
        ? 'Everyone who uses the gallery: your hub groups could not be read ' +
          `(${context.audience.error}). Cancel if it is for a group only.`
        : 'Everyone who uses the gallery (you are in no hub group).';
      set.appendChild(note);
      return set;
    }
    const onlyGroups = groups.some(g => chosen.has(g));
    const everyone = radio('everyone', 'Everyone who uses the gallery', !onlyGroups);
    const members = radio('groups', 'Only the members of these hub groups:', onlyGroups);
    const boxes = el('div', { class: 'jp-GalleryStage-groups', role: 'group' });
    boxes.setAttribute('aria-label', 'Hub groups');
    for (const name of groups) {
      const line = el('label', { class: 'jp-GalleryStage-check' });
      const box = el('input', { type: 'checkbox', name: 'group', value: name });
      box.checked = chosen.has(name);
      // Ticking a group chooses "only the members"; choosing everyone unticks them.
      box.addEventListener('change', () => {
        if (box.checked) {
          members.checked = true;
        }
      });
      line.append(box, ` ${name}`);
      boxes.appendChild(line);
    }
    everyone.addEventListener('change', () => {
      boxes.querySelectorAll('input').forEach(b => ((b as HTMLInputElement).checked = false));
    });
    set.appendChild(boxes);
    note.textContent =
      "Only they (and the group's reviewers) will find it, and its reviewers review it.";
    set.appendChild(note);
    const revise = this.node.querySelector('[name="revise"]') as HTMLInputElement | null;
    const keep = (): void => {
      set.disabled = !!revise?.checked;
      set.title = set.disabled ? "A new revision keeps its example's audience." : '';
    };
    revise?.addEventListener('change', keep);
    keep();
    return set;
  }

  getValue(): IForm {
    const form = this.node as HTMLFormElement;
    const field = (name: string): string =>
      ((form.querySelector(`[name="${name}"]`) as HTMLInputElement | null)?.value ?? '').trim();
    const revise = form.querySelector('[name="revise"]') as HTMLInputElement | null;
    const includeEnv = form.querySelector('[name="include-environment"]') as HTMLInputElement;
    const envText = form.querySelector('[name="environment"]') as HTMLTextAreaElement;
    const links: IDataLink[] = [];
    form.querySelectorAll('.jp-GalleryStage-link').forEach(line => {
      const box = line.querySelector('[name="data-link"]') as HTMLInputElement;
      const name = line.querySelector('[name="data-link-name"]') as HTMLInputElement;
      if (box.checked) {
        links.push({ name: name.value.trim(), target: box.value });
      }
    });
    return {
      title: field('title'),
      summary: field('summary'),
      tags: field('tags')
        .split(',')
        .map(t => t.trim())
        .filter(t => t),
      licence: field('licence'),
      example: revise?.checked ? revise.dataset.slug || '' : '',
      files: Array.from(form.querySelectorAll('[name="file"]:checked')).map(
        b => (b as HTMLInputElement).value
      ),
      environment: includeEnv.checked
        ? { name: envText.dataset.name || 'requirements.txt', content: envText.value }
        : null,
      data_links: links,
      audience:
        (form.querySelector('[name="audience"]:checked') as HTMLInputElement | null)?.value ===
        'groups'
          ? 'groups'
          : 'everyone',
      groups: Array.from(form.querySelectorAll('[name="group"]:checked')).map(
        b => (b as HTMLInputElement).value
      )
    };
  }
}

/** Make sure the gallery gets what the contributor sees: save unsaved changes first. */
async function ensureSaved(panel: NotebookPanel): Promise<boolean> {
  if (!panel.context.model.dirty) {
    return true;
  }
  const answer = await showDialog({
    title: 'Unsaved changes',
    body:
      'This notebook has unsaved changes, and the gallery only receives the saved file. ' +
      'Save it now and continue?',
    buttons: [Dialog.cancelButton(), Dialog.okButton({ label: 'Save and continue' })]
  });
  if (!answer.button.accept) {
    return false;
  }
  await panel.context.save();
  if (panel.context.model.dirty) {
    await showErrorMessage('Unsaved changes', 'The notebook could not be saved; nothing was submitted.');
    return false;
  }
  return true;
}

async function submit(
  settings: ServerConnection.ISettings,
  panel: NotebookPanel | null
): Promise<void> {
  if (!panel) {
    await showErrorMessage(LABEL, 'Open a notebook first.');
    return;
  }
  try {
    await panel.context.ready;
    if (!(await ensureSaved(panel))) {
      return;
    }
    const path = panel.context.path;
    const kernel = panel.sessionContext.session?.kernel?.id ?? '';
    const context = await requestAPI<IContext>(
      settings,
      `context?${URLExt.objectToQueryString({ path, kernel }).slice(1)}`
    );
    // The notebook's own metadata is newer than what is on disk only if unsaved; it is saved.
    let values: IForm | null = null;
    for (;;) {
      const result = await showDialog({
        title: LABEL,
        body: new StageForm(path, context, values),
        buttons: [Dialog.cancelButton(), Dialog.okButton({ label: 'Submit' })],
        focusNodeSelector: 'input[name="title"]'
      });
      if (!result.button.accept || !result.value) {
        return;
      }
      values = result.value as IForm;
      if (!values.title) {
        await showErrorMessage('Invalid submission', 'Give the example a title.');
      } else if (!values.example && values.audience === 'groups' && !values.groups.length) {
        await showErrorMessage(
          'Invalid submission',
          'Tick at least one hub group, or choose everyone.'
        );
      } else {
        break;
      }
    }
    if (panel.context.model.dirty && !(await ensureSaved(panel))) {
      return;
    }
    const reply = await requestAPI<{
      url: string;
      submission: { example: string; revision: number; id: number; groups: string[] };
      metadata: { [key: string]: any };
    }>(settings, 'submit', {
      method: 'POST',
      body: JSON.stringify({
        path,
        ...values,
        groups: values.audience === 'groups' ? values.groups : []
      })
    });
    panel.model?.setMetadata('gallery', reply.metadata);
    await panel.context.save();
    const body = el('div', { class: 'jp-GalleryStage-result' });
    body.append(
      el(
        'p',
        {},
        `Staged as "${reply.submission.example}", revision ${reply.submission.revision}. ` +
          'The gallery now runs its checks and renders a preview; a reviewer will look at it.'
      ),
      el(
        'p',
        { class: 'jp-GalleryStage-audience-result' },
        reply.submission.groups?.length
          ? `Only the members of ${reply.submission.groups.join(', ')} will see it.`
          : 'Everyone who uses the gallery will see it.'
      )
    );
    body.appendChild(
      el('a', { href: reply.url, target: '_blank', rel: 'noopener', class: 'jp-GalleryStage-link-out' }, 'Open the submission page')
    );
    await showDialog({
      title: 'Submitted to the gallery',
      body: new Widget({ node: body }),
      buttons: [Dialog.okButton()]
    });
  } catch (err) {
    if (err instanceof StageError) {
      await showErrorMessage(TITLES[err.kind] || 'Submission failed', err.message);
    } else {
      await showErrorMessage('Submission failed', String(err));
    }
  }
}

const plugin: JupyterFrontEndPlugin<void> = {
  id: 'gallery-stage:plugin',
  description: 'Submit the current notebook to the gallery.',
  autoStart: true,
  requires: [INotebookTracker],
  optional: [ICommandPalette, IMainMenu],
  activate: (
    app: JupyterFrontEnd,
    tracker: INotebookTracker,
    palette: ICommandPalette | null,
    mainMenu: IMainMenu | null
  ) => {
    const settings = app.serviceManager.serverSettings;
    app.commands.addCommand(COMMAND, {
      label: LABEL,
      caption: 'Submit this notebook to the examples gallery',
      isEnabled: () => tracker.currentWidget !== null,
      execute: () => submit(settings, tracker.currentWidget)
    });
    palette?.addItem({ command: COMMAND, category: 'Gallery' });
    mainMenu?.fileMenu.addGroup([{ command: COMMAND }], 100);
    tracker.widgetAdded.connect((_, panel) => {
      const button = new ToolbarButton({
        className: 'jp-GalleryStage-button',
        label: LABEL,
        tooltip: 'Submit this notebook to the examples gallery',
        onClick: () => void submit(settings, panel)
      });
      panel.toolbar.insertItem(10, 'gallerySubmit', button);
    });
  }
};

export default [plugin, examplesPlugin];
