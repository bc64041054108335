"""initial schema

Revision ID: 0001
Revises:
Create Date: 2026-11-24 06:07:53.672333
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = '0001'
down_revision: str | None = None
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table('associations',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('calling_ae', sa.String(length=16), nullable=False),
    sa.Column('called_ae', sa.String(length=16), nullable=False),
    sa.Column('peer_host', sa.String(length=255), nullable=False),
    sa.Column('peer_port', sa.Integer(), nullable=False),
    sa.Column('tls', sa.Boolean(), nullable=False),
    sa.Column('started_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('ended_at', sa.DateTime(timezone=True), nullable=True),
    sa.Column('duration_s', sa.Float(), nullable=True),
    sa.Column('outcome', sa.String(length=16), nullable=False),
    sa.Column('reason', sa.Text(), nullable=True),
    sa.Column('requests', sa.Integer(), nullable=False),
    sa.Column('stored', sa.Integer(), nullable=False),
    sa.Column('duplicates', sa.Integer(), nullable=False),
    sa.Column('failures', sa.Integer(), nullable=False),
    sa.Column('bytes_received', sa.BigInteger(), nullable=False),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_associations'))
    )
    op.create_table('model_versions',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('name', sa.String(length=128), nullable=False),
    sa.Column('version', sa.String(length=160), nullable=False),
    sa.Column('path', sa.String(length=1024), nullable=False),
    sa.Column('sha256', sa.String(length=64), nullable=False),
    sa.Column('trained_on_phantom', sa.Boolean(), nullable=False),
    sa.Column('active', sa.Boolean(), nullable=False),
    sa.Column('metrics', sa.JSON(), nullable=True),
    sa.Column('notes', sa.Text(), nullable=True),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('promoted_at', sa.DateTime(timezone=True), nullable=True),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_model_versions')),
    sa.UniqueConstraint('version', name=op.f('uq_model_versions_version'))
    )
    op.create_table('patients',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('patient_id', sa.String(length=64), nullable=False),
    sa.Column('issuer', sa.String(length=64), nullable=False),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_patients')),
    sa.UniqueConstraint('patient_id', 'issuer', name='uq_patients_patient_id_issuer')
    )
    op.create_table('studies',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('study_instance_uid', sa.String(length=64), nullable=False),
    sa.Column('patient_fk', sa.Integer(), nullable=False),
    sa.Column('study_date', sa.String(length=8), nullable=True),
    sa.Column('accession_number', sa.String(length=16), nullable=True),
    sa.Column('study_description', sa.String(length=64), nullable=True),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.ForeignKeyConstraint(['patient_fk'], ['patients.id'], name=op.f('fk_studies_patient_fk_patients')),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_studies')),
    sa.UniqueConstraint('study_instance_uid', name=op.f('uq_studies_study_instance_uid'))
    )
    op.create_index('ix_studies_patient_fk', 'studies', ['patient_fk'], unique=False)
    op.create_table('series',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('series_instance_uid', sa.String(length=64), nullable=False),
    sa.Column('study_fk', sa.Integer(), nullable=False),
    sa.Column('modality', sa.String(length=16), nullable=True),
    sa.Column('series_number', sa.Integer(), nullable=True),
    sa.Column('series_description', sa.String(length=64), nullable=True),
    sa.Column('manufacturer', sa.String(length=64), nullable=True),
    sa.Column('sop_class_uid', sa.String(length=64), nullable=True),
    sa.Column('frame_of_reference_uid', sa.String(length=64), nullable=True),
    sa.Column('state', sa.String(length=16), nullable=False),
    sa.Column('decision', sa.String(length=16), nullable=True),
    sa.Column('decision_reason', sa.Text(), nullable=True),
    sa.Column('instance_count', sa.Integer(), nullable=False),
    sa.Column('first_received_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('last_received_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('burst_started_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('completed_at', sa.DateTime(timezone=True), nullable=True),
    sa.Column('completion', sa.String(length=16), nullable=True),
    sa.ForeignKeyConstraint(['study_fk'], ['studies.id'], name=op.f('fk_series_study_fk_studies')),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_series')),
    sa.UniqueConstraint('series_instance_uid', name=op.f('uq_series_series_instance_uid'))
    )
    op.create_index('ix_series_state_last', 'series', ['state', 'last_received_at'], unique=False)
    op.create_index('ix_series_study_fk', 'series', ['study_fk'], unique=False)
    op.create_table('instances',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('sop_instance_uid', sa.String(length=64), nullable=False),
    sa.Column('series_fk', sa.Integer(), nullable=False),
    sa.Column('association_fk', sa.Integer(), nullable=True),
    sa.Column('sop_class_uid', sa.String(length=64), nullable=False),
    sa.Column('transfer_syntax_uid', sa.String(length=64), nullable=False),
    sa.Column('path', sa.String(length=512), nullable=False),
    sa.Column('size_bytes', sa.BigInteger(), nullable=False),
    sa.Column('received_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('instance_number', sa.Integer(), nullable=True),
    sa.Column('image_type', sa.String(length=128), nullable=True),
    sa.Column('orientation', sa.JSON(), nullable=True),
    sa.Column('slice_positions', sa.JSON(), nullable=True),
    sa.Column('slice_thickness', sa.Float(), nullable=True),
    sa.Column('rows', sa.Integer(), nullable=True),
    sa.Column('columns', sa.Integer(), nullable=True),
    sa.Column('number_of_frames', sa.Integer(), nullable=True),
    sa.Column('acquisition_number', sa.Integer(), nullable=True),
    sa.Column('temporal_position_index', sa.Integer(), nullable=True),
    sa.Column('trigger_time', sa.Float(), nullable=True),
    sa.Column('cardiac_phase_percent', sa.Float(), nullable=True),
    sa.Column('nominal_interval', sa.Float(), nullable=True),
    sa.ForeignKeyConstraint(['association_fk'], ['associations.id'], name=op.f('fk_instances_association_fk_associations')),
    sa.ForeignKeyConstraint(['series_fk'], ['series.id'], name=op.f('fk_instances_series_fk_series')),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_instances')),
    sa.UniqueConstraint('sop_instance_uid', name=op.f('uq_instances_sop_instance_uid'))
    )
    op.create_index('ix_instances_series_fk', 'instances', ['series_fk'], unique=False)
    op.create_table('jobs',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('series_fk', sa.Integer(), nullable=False),
    sa.Column('study_fk', sa.Integer(), nullable=False),
    sa.Column('phase_key', sa.String(length=64), nullable=True),
    sa.Column('phase_value', sa.String(length=64), nullable=True),
    sa.Column('state', sa.String(length=16), nullable=False),
    sa.Column('reason', sa.Text(), nullable=True),
    sa.Column('instance_count', sa.Integer(), nullable=False),
    sa.Column('attempts', sa.Integer(), nullable=False),
    sa.Column('lease_token', sa.String(length=64), nullable=True),
    sa.Column('lease_expires_at', sa.DateTime(timezone=True), nullable=True),
    sa.Column('worker_id', sa.String(length=128), nullable=True),
    sa.Column('model_version_fk', sa.Integer(), nullable=True),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('updated_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('started_at', sa.DateTime(timezone=True), nullable=True),
    sa.Column('finished_at', sa.DateTime(timezone=True), nullable=True),
    sa.ForeignKeyConstraint(['model_version_fk'], ['model_versions.id'], name=op.f('fk_jobs_model_version_fk_model_versions')),
    sa.ForeignKeyConstraint(['series_fk'], ['series.id'], name=op.f('fk_jobs_series_fk_series')),
    sa.ForeignKeyConstraint(['study_fk'], ['studies.id'], name=op.f('fk_jobs_study_fk_studies')),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_jobs'))
    )
    op.create_index('ix_jobs_series_fk', 'jobs', ['series_fk'], unique=False)
    op.create_index('ix_jobs_state_created', 'jobs', ['state', 'created_at'], unique=False)
    op.create_index('ix_jobs_study_fk', 'jobs', ['study_fk'], unique=False)
    op.create_table('events',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('kind', sa.String(length=32), nullable=False),
    sa.Column('study_fk', sa.Integer(), nullable=True),
    sa.Column('series_fk', sa.Integer(), nullable=True),
    sa.Column('job_fk', sa.Integer(), nullable=True),
    sa.Column('detail', sa.Text(), nullable=True),
    sa.ForeignKeyConstraint(['job_fk'], ['jobs.id'], name=op.f('fk_events_job_fk_jobs')),
    sa.ForeignKeyConstraint(['series_fk'], ['series.id'], name=op.f('fk_events_series_fk_series')),
    sa.ForeignKeyConstraint(['study_fk'], ['studies.id'], name=op.f('fk_events_study_fk_studies')),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_events'))
    )
    op.create_index('ix_events_at', 'events', ['at'], unique=False)
    op.create_index('ix_events_series_fk', 'events', ['series_fk'], unique=False)
    op.create_table('results',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('job_fk', sa.Integer(), nullable=False),
    sa.Column('model_version_fk', sa.Integer(), nullable=True),
    sa.Column('status', sa.String(length=16), nullable=False),
    sa.Column('landmarks_lps', sa.JSON(), nullable=True),
    sa.Column('plane', sa.JSON(), nullable=True),
    sa.Column('measurements', sa.JSON(), nullable=True),
    sa.Column('confidence', sa.JSON(), nullable=True),
    sa.Column('summary', sa.Text(), nullable=True),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.ForeignKeyConstraint(['job_fk'], ['jobs.id'], name=op.f('fk_results_job_fk_jobs')),
    sa.ForeignKeyConstraint(['model_version_fk'], ['model_versions.id'], name=op.f('fk_results_model_version_fk_model_versions')),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_results'))
    )
    op.create_index('ix_results_job_fk', 'results', ['job_fk'], unique=False)
    op.create_table('deliveries',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('result_fk', sa.Integer(), nullable=False),
    sa.Column('destination', sa.String(length=64), nullable=False),
    sa.Column('kind', sa.String(length=16), nullable=False),
    sa.Column('sop_instance_uid', sa.String(length=64), nullable=False),
    sa.Column('path', sa.String(length=1024), nullable=False),
    sa.Column('state', sa.String(length=16), nullable=False),
    sa.Column('attempts', sa.Integer(), nullable=False),
    sa.Column('next_attempt_at', sa.DateTime(timezone=True), nullable=True),
    sa.Column('last_error', sa.Text(), nullable=True),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('updated_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('sent_at', sa.DateTime(timezone=True), nullable=True),
    sa.ForeignKeyConstraint(['result_fk'], ['results.id'], name=op.f('fk_deliveries_result_fk_results')),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_deliveries'))
    )
    op.create_index('ix_deliveries_result_fk', 'deliveries', ['result_fk'], unique=False)
    op.create_index('ix_deliveries_state_next', 'deliveries', ['state', 'next_attempt_at'], unique=False)
    op.create_table('delivery_attempts',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('delivery_fk', sa.Integer(), nullable=False),
    sa.Column('started_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('finished_at', sa.DateTime(timezone=True), nullable=True),
    sa.Column('status', sa.Integer(), nullable=True),
    sa.Column('error', sa.Text(), nullable=True),
    sa.ForeignKeyConstraint(['delivery_fk'], ['deliveries.id'], name=op.f('fk_delivery_attempts_delivery_fk_deliveries')),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_delivery_attempts'))
    )
    op.create_index('ix_delivery_attempts_delivery_fk', 'delivery_attempts', ['delivery_fk'], unique=False)


def downgrade() -> None:
    op.drop_index('ix_delivery_attempts_delivery_fk', table_name='delivery_attempts')
    op.drop_table('delivery_attempts')
    op.drop_index('ix_deliveries_state_next', table_name='deliveries')
    op.drop_index('ix_deliveries_result_fk', table_name='deliveries')
    op.drop_table('deliveries')
    op.drop_index('ix_results_job_fk', table_name='results')
    op.drop_table('results')
    op.drop_index('ix_events_series_fk', table_name='events')
    op.drop_index('ix_events_at', table_name='events')
    op.drop_table('events')
    op.drop_index('ix_jobs_study_fk', table_name='jobs')
    op.drop_index('ix_jobs_state_created', table_name='jobs')
    op.drop_index('ix_jobs_series_fk', table_name='jobs')
    op.drop_table('jobs')
    op.drop_index('ix_instances_series_fk', table_name='instances')
    op.drop_table('instances')
    op.drop_index('ix_series_study_fk', table_name='series')
    op.drop_index('ix_series_state_last', table_name='series')
    op.drop_table('series')
    op.drop_index('ix_studies_patient_fk', table_name='studies')
    op.drop_table('studies')
    op.drop_table('patients')
    op.drop_table('model_versions')
    op.drop_table('associations')
