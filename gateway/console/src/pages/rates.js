// Rate card: its versions, and the prices in force now.
import { get } from '../api.js';
import { h, page, table, when } from '../dom.js';

export async function rates() {
  const [card, models] = await Promise.all([get('/admin/v1/rate-card'), get('/admin/v1/models')]);
  const c = card.currency;
  page('Rate card',
    h('p', { class: 'muted' }, `Prices per million tokens in ${c}. In force now: version ${models.rate_card_version ?? 'none'}.`),
    table('Prices in force', ['Model', 'Input', 'Cached input', 'Cache write', 'Output', 'Reasoning', 'Served'],
      models.models.map((m) => [m.model, m.input_per_mtok, m.cached_input_per_mtok, m.cache_write_per_mtok, m.output_per_mtok, m.reasoning_per_mtok, m.served ? 'yes' : 'no']),
      { num: [1, 2, 3, 4, 5] }),
    h('h2', {}, 'Versions'),
    table('Rate card versions, oldest first', ['Version', 'In force from', 'Models', 'Resources'],
      card.versions.map((v) => [v.id, when(v.effective_from), String(v.models), String(v.resources)]), { num: [2, 3] }));
}
